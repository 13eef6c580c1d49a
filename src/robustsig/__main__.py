from robustsig.cli import main

main()
