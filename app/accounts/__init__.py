"""Who runs an account: its owners and their sign-in, the console's operators, the provisioning of
accounts and keys, and the audit log of every change to money or access."""
