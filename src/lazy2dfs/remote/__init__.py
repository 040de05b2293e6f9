"""Remote layers: what to fetch (from snapshot labels), how to find its TOC, how to read it."""
