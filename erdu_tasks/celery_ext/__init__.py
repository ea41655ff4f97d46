"""Extensions of Celery and kombu: the hardened broker transport, the consumer guard, the beat lock, JSON logs.

May import: celery, kombu, redis, names, settings, errors. Nothing of the pipeline."""
