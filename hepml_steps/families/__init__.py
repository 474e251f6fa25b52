"""Built-in model families. Each module is imported only when its family is used."""
