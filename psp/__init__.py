"""Payment-provider simulator: a stand-in for Stripe PaymentIntents with its own ledger."""
