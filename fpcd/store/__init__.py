"""The local SQLite store: the only SQL, migrations, the data dir's lock."""
