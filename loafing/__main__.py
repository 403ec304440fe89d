from loafing.cli import main

main()
