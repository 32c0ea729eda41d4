"""The command line: the `monitord` entry point and its batch commands."""
