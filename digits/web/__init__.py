"""The web console: dashboard, batches, the review queue, draw-a-digit, upload and a JSON API.

It sits on top beside the CLI (the CLI's `digits web` starts it; nothing else imports it).
Handlers are thin: what they show comes from `digits.core.queries` and `digits.core.reviews`,
what they do from the same library functions as the CLI. Pages that only read never import
TensorFlow: only the draw page's prediction loads a model, lazily, once per process."""
