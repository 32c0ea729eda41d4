"""Where records come from: the audit log file, auditd's plugin pipe, the journal."""
