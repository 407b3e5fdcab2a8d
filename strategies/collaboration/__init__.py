"""Small/large collaboration and routers: SpecReason, GlimpRouter, cascades,
difficulty-adaptive routing and compute-optimal allocation."""
