"""Rich renderables fed plain data. Domain code never prints; the CLI renders these."""
