from cfn.cli.main import main

main()
