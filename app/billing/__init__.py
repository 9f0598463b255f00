"""What a request costs and how it is paid: the request's need, balance reservations, the ledger
writer and its spool, the started-record journal, packages and their grants."""
