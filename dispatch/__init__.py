"""City-scale dispatch: zones, the courier geo index, zone leases and the batch matcher."""
