"""The OpenAI face's parts beside its routes (``app.api.openai_compat``).

outcomes     the HTTP status of every job outcome; errors in OpenAI's shape
retries      a retried request finds the job it started (no job paid twice)
choices      ``n`` > 1: the job's top distinct answers
streaming    progress chunks while the job runs; closing the stream cancels it
repository   the queries ``retries`` needs
"""
