"""The node's processes: ``c4 kamailio`` and what it starts and keeps.

- launcher.py: ``c4 kamailio``, Kamailio in the foreground with the router;
- launch_options.py: its options, names, defaults and help;
- launch_plan.py: what it starts (Kamailio's command line and environment, helper processes);
- launch_supervision.py: running a plan (helpers first, then Kamailio, then all stopped);
- secret.py: the deployment secret and the keys derived from it;
- memory.py: giving freed memory back to the kernel (``malloc_trim``).

Nothing is imported or re-exported here.
"""
