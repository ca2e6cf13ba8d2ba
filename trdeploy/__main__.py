from trdeploy.cli import main

main()
