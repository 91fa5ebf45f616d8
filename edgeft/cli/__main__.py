from edgeft.cli.app import main

main()
