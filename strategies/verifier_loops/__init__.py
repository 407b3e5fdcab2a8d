"""Verifier loops: RPC perplexity consistency, best-of-N, GenRM, Solve-Detect-Verify,
iterative refine, particle filtering and beam search."""
