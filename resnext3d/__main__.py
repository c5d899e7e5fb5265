from resnext3d.cli import main

main()
