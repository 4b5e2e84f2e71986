"""agl: the command-line face of store_fs (a thin typer layer)."""
