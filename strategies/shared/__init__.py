"""Helpers the strategy families share: answer extraction and voting, prompts, scores,
candidate sampling, verification, step-wise generation and thinking budgets. No
strategy lives here; ``strategies.registry`` lists those."""
