from kalmix.cli import main

main()
