"""The pure core: values, phases, the transition table and every decision.

Nothing here does I/O, reads a clock or imports asyncio; time arrives as an argument.
"""
