import sys

from pitvit.cli import main

sys.exit(main())
