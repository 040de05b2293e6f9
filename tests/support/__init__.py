"""What the tests share, one of each: builders, test doubles, the stack of real parts.

Test modules import helpers from here and get fixtures from a conftest, never from another
test module."""
