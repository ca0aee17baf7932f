"""The `bandistill` command line: one module per stage; parsing and printing only."""
