"""The `rds` command line (stdlib argparse over the SDK)."""
