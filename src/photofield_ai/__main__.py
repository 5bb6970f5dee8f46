import sys

from photofield_ai.cli import main

sys.exit(main())
