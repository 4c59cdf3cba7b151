"""Tables, engine factory, migrations and the statements that must be atomic."""
