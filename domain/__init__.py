"""Pure business types and rules. No I/O, no heavy imports: workflows import this package."""
