"""Budgeted thinking: separate thinking and answer budgets (Elastic Reasoning), budget
forcing, Plan-and-Budget and First Finish Search."""
