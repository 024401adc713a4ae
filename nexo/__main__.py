import sys

from nexo.cli import main

sys.exit(main())
