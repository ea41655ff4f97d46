"""The local stack: the erdu up supervisor, the embedded Redis and Postgres servers, the demo and Flower's launcher.

An entry point's helper: may import anything below it."""
