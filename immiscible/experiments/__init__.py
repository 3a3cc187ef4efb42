"""One module per paper experiment: what is its own (runs, tables, figures), built on the engine and evaluation.
Nothing below this package imports it."""
