"""Reading inputs lazily and writing results with their metadata."""
