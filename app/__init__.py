"""trustserve: trustworthy vision-language predictions as a service."""

__version__ = "0.1.0"
