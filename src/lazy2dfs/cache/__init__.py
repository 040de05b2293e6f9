"""Content-addressed chunk store on disk, shared by every layer and image."""
