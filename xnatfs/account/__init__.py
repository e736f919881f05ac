"""Stored logins: ``xnatfs login`` trades a password (or a browser's JSESSIONID) for an XNAT
alias token once, keeps the token (never the password), renews it before it runs out, and
makes its server the default, so that later commands, cron jobs and batch scripts need
neither a password nor the URL.

``store`` keeps tokens on disk or in the system keyring; ``tokens`` talks to the server
(issue, renew, invalidate) and keeps a long-running client's token fresh; ``cli`` holds the
``login``, ``logout``, ``whoami`` and ``token env`` commands.
"""
