"""Small helpers with no vlmforge dependencies."""
