from xnat_emulator.cli import main

raise SystemExit(main())
