"""Model adapters: every checkpoint format behind one Model protocol."""
