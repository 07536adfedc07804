"""`python -m unimoe_demo`: the same as `unimoe-demo`."""

from .run import main

main()
