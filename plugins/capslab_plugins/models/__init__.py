"""Built-in capslab plugins; each module is one entry point in the capslab group."""
