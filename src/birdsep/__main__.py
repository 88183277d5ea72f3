import sys

from birdsep.cli import main

sys.exit(main())
