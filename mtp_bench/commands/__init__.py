"""The CLI subcommands, one module each (plus bench/ and repro/)."""
