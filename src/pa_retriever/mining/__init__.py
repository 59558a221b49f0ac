"""Hard-negative mining: teachers score candidates once (miner, source), pure methods choose from them (methods)."""
