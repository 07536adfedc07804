"""`python -m unimoe_demo`: the same as `unimoe-demo`."""

from .cli import main

main()
