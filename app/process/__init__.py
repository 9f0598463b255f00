"""The processes of ``python -m app serve``: the supervisor, its workers, and how both take the
stop signals."""
