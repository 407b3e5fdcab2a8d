"""What the routes call: one function per use case, on top of ``core``. No HTTP here."""
