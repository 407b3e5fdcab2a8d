"""One router per resource; each route validates, calls a service and shapes the reply."""
