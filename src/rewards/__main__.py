import sys

from rewards.cli.main import main

sys.exit(main())
