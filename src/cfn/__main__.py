from cfn.cli.launch import main

main()
